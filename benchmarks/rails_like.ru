# A Rails-like handler for benchmarks/realistic.py: about 1 ms of Ruby CPU (rendering a view),
# a 10 ms wait (the database), and 2 KB of HTML, like a small Rails page.
ROW = "<tr><td class=\"id\">%d</td><td class=\"name\">Product %d</td><td>$%d.99</td></tr>\n"

app = lambda do |env|
  started = Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID)
  scratch = +""
  i = 0
  while Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID) - started < 0.001
    scratch << format(ROW, i, i, i % 100)
    i += 1
    scratch.clear if scratch.bytesize > 32_768
  end
  sleep 0.010
  rows = (1..24).map { |n| format(ROW, n, n, n) }.join
  html = "<!DOCTYPE html><html><head><title>Products</title></head><body><table>\n#{rows}</table></body></html>\n"
  [200, {"content-type" => "text/html; charset=utf-8", "content-length" => html.bytesize.to_s}, [html]]
end

run app
