-- report.lua: print latency percentiles and error counts at the end of a run,
-- in the spirit of wrk's report scripts.
--
--   miop-bench miop://$HOSTNAME:pk@host:port/ -t 12 -c 60000 -d 10m -s report.lua
--   miop-bench miop://$HOSTNAME:pk@host:port/ -t 12 -c 60000 -d 10m -s report.lua -- csv
--
-- The optional argument after `--` picks the format: "text" (the default) or
-- "csv" (name,value lines, easy to paste into a spreadsheet or diff between runs).
--
-- done(summary, latency, latencies) runs once, after the results of every
-- thread and process are merged:
--   summary   duration (microseconds), connections, binds, pings, pushes,
--             requests (binds + pings), peak_connected,
--             errors = { connect, read, write, timeout, bind }
--   latency   heartbeat (Ping -> Pong) latency, like wrk's `latency`
--   latencies { connect = ..., bind = ..., ping = ..., push = ... }
-- Each latency has min, max, mean, stdev (microseconds), :percentile(p)
-- for p in 0..100, #latency and latency[i] = { value = ..., count = ... }.

local format = "text"

function init(args)
   local f = args[1]
   if f == nil then
      return
   end
   if f ~= "text" and f ~= "csv" then
      error("unknown format '" .. f .. "' (expected text or csv)")
   end
   format = f
end

local percentiles = { 50, 90, 99, 99.9 }

-- Microseconds the way wrk prints them.
local function us(v)
   if v < 1000 then
      return string.format("%.2fus", v)
   elseif v < 1000000 then
      return string.format("%.2fms", v / 1000)
   else
      return string.format("%.2fs", v / 1000000)
   end
end

local function text(summary, latencies)
   io.write("------------------------------\n")
   for _, name in ipairs({ "bind", "ping" }) do
      local l = latencies[name]
      local title = name:sub(1, 1):upper() .. name:sub(2) .. " latency"
      if #l == 0 then
         io.write(title, ": no samples\n")
      else
         io.write(string.format("%s (%d samples, mean %s, max %s)\n",
            title, l.count or 0, us(l.mean), us(l.max)))
         for _, p in ipairs(percentiles) do
            io.write(string.format("  %6s  %10s\n", p .. "%", us(l:percentile(p))))
         end
      end
   end
   local e = summary.errors
   io.write(string.format("Errors: connect %d, read %d, write %d, timeout %d, bind %d\n",
      e.connect, e.read, e.write, e.timeout, e.bind))
   io.write(string.format("%d binds, %d pings in %.2fs\n",
      summary.binds, summary.pings, summary.duration / 1000000))
end

local function csv(summary, latencies)
   io.write("name,value\n")
   for _, name in ipairs({ "bind", "ping" }) do
      local l = latencies[name]
      for _, p in ipairs(percentiles) do
         io.write(string.format("%s_p%g_us,%d\n", name, p, l:percentile(p)))
      end
   end
   for _, kind in ipairs({ "connect", "read", "write", "timeout", "bind" }) do
      io.write(string.format("errors_%s,%d\n", kind, summary.errors[kind]))
   end
end

function done(summary, latency, latencies)
   if format == "csv" then
      csv(summary, latencies)
   else
      text(summary, latencies)
   end
end
