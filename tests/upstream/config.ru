# The upstream app proxylog's tests and `make run` put real Puma in front of.
# It echoes what it received so tests can assert on what Puma actually saw.
#
#   GET  /                      JSON echo: REMOTE_ADDR, Host, every HTTP_* header, body size
#   ANY  /status/CODE           answers CODE with the same echo body
#   GET  /slow?s=SECONDS        sleeps, then echoes
#   GET  /large?mb=N            streams N MiB (Content-Length set) in 64 KiB chunks
#   GET  /chunked?mb=N          streams N MiB with chunked encoding (no Content-Length)
#   GET  /reset                 promises 100000 bytes, sends 10, then drops the connection
#   POST /login                 401 unless the form says password=letmein
#   GET  /__seen                the paths (with query) of every request this Puma received, in order
#   ANY  anything else          JSON echo with status 200
require "json"

CHUNK = ("x" * 65_536).freeze

class Echo
  def initialize
    @seen = []
    @lock = Mutex.new
  end

  def call(env)
    req = Rack::Request.new(env)
    return [200, {"content-type" => "application/json"}, [JSON.generate(@lock.synchronize { @seen.dup })]] if req.path_info == "/__seen"

    @lock.synchronize { @seen << req.fullpath.sub(%r{\Ahttps?://[^/]+}, "") }
    case req.path_info
    when %r{\A/status/(\d{3})\z} then echo(env, Regexp.last_match(1).to_i)
    when "/slow"
      sleep(Float(req.params.fetch("s", "1")))
      echo(env, 200)
    when "/large" then stream(Integer(req.params.fetch("mb", "1")), chunked: false)
    when "/chunked" then stream(Integer(req.params.fetch("mb", "1")), chunked: true)
    when "/reset" then reset(env)
    when "/login"
      ok = req.post? && req.params["password"] == "letmein"
      echo(env, ok ? 200 : 401)
    else echo(env, 200)
    end
  end

  private

  def echo(env, status)
    body_bytes = env["rack.input"] ? env["rack.input"].read.bytesize : 0
    headers = env.select { |k, _| k.start_with?("HTTP_") }
    payload = {
      remote_addr: env["REMOTE_ADDR"], method: env["REQUEST_METHOD"], path: env["PATH_INFO"],
      query: env["QUERY_STRING"], host: env["HTTP_HOST"], headers: headers, body_bytes: body_bytes,
    }
    [status, {"content-type" => "application/json"}, [JSON.generate(payload)]]
  end

  def stream(mib, chunked:)
    chunks = mib * 16
    headers = {"content-type" => "application/octet-stream"}
    headers["content-length"] = (chunks * CHUNK.bytesize).to_s unless chunked
    [200, headers, Enumerator.new { |y| chunks.times { y << CHUNK } }]
  end

  def reset(env)
    io = env["rack.hijack"].call
    io.write("HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n0123456789")
    io.flush
    io.close
    [-1, {}, []]
  end
end

run Echo.new
