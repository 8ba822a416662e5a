# The demo shop `make run` puts real Puma behind proxylog: a few pages, a login that fails
# unless the password is "letmein", and 404 for everything else, as a Rails app would answer,
# so probes and scanners trip proxylog's default rules.
#
#   GET  /                  a page
#   GET  /hello             JSON
#   GET  /users/sign_in     the login form
#   POST /users/sign_in     302 to / with password=letmein, else 422 (a failed login)
#   ANY  anything else      404
require "json"

PAGE = <<~HTML.freeze
  <!doctype html><title>demo shop</title><h1>demo shop</h1>
  <p><a href="/hello">hello</a> · <a href="/users/sign_in">sign in</a></p>
HTML
FORM = <<~HTML.freeze
  <!doctype html><title>sign in</title>
  <form method="post" action="/users/sign_in">
    <input name="user[email]"> <input name="user[password]" type="password"> <button>sign in</button>
  </form>
HTML

app = lambda do |env|
  req = Rack::Request.new(env)
  case [req.request_method, req.path_info]
  in ["GET" | "HEAD", "/"] then [200, {"content-type" => "text/html"}, [PAGE]]
  in ["GET" | "HEAD", "/hello"]
    [200, {"content-type" => "application/json"}, [JSON.generate(hello: "world", page: req.params["page"])]]
  in ["GET" | "HEAD", "/users/sign_in"] then [200, {"content-type" => "text/html"}, [FORM]]
  in ["POST", "/users/sign_in"]
    password = req.params.dig("user", "password") || req.params["password"]
    if password == "letmein"
      [302, {"location" => "/", "content-type" => "text/plain"}, ["signed in\n"]]
    else
      [422, {"content-type" => "text/html"}, ["<p>Invalid email or password.</p>\n"]]
    end
  else [404, {"content-type" => "text/html"}, ["<p>The page you were looking for doesn't exist.</p>\n"]]
  end
end

run app
