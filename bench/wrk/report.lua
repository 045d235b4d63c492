-- Shared by the other scripts: after a run, print one line that bench/run.py reads.
--
-- wrk's own summary prints latencies with units chosen per value ("812.00us", "1.20ms"); this
-- line carries the same figures as plain microseconds in JSON, after a fixed marker, so the
-- harness needs no unit parsing. Scripts load it with dofile() from their own directory (found
-- through debug.getinfo), so they work from any working directory.

local report = {}

function report.done(summary, latency, requests)
   local errors = summary.errors
   local fields = {
      string.format('"requests":%d', summary.requests),
      string.format('"duration_us":%d', summary.duration),
      string.format('"bytes":%d', summary.bytes),
      string.format('"errors_connect":%d', errors.connect),
      string.format('"errors_read":%d', errors.read),
      string.format('"errors_write":%d', errors.write),
      string.format('"errors_timeout":%d', errors.timeout),
      string.format('"non_2xx_3xx":%d', errors.status),
      string.format('"latency_mean_us":%.1f', latency.mean),
      string.format('"latency_max_us":%.1f', latency.max),
   }
   for _, p in ipairs({50, 90, 99, 99.9}) do
      fields[#fields + 1] = string.format('"latency_p%s_us":%.1f', tostring(p):gsub("%.", "_"), latency:percentile(p))
   end
   io.write("WRK_RESULT_JSON {" .. table.concat(fields, ",") .. "}\n")
end

return report
