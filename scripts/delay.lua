-- delay.lua: random think time between heartbeats.
--
-- This is wrk's stock delay.lua. wrk calls delay() before every HTTP request;
-- miop-bench calls it before every heartbeat of every connection and waits the
-- number of milliseconds it returns before sending the next Ping, instead of
-- the heartbeat interval the server announced. Here: a random 10-50 ms, so each
-- connection pings 20-100 times a second. That is a stress test of the Ping
-- path (60,000 connections make about two million Pings a second), not a model
-- of idle phones: return something like math.random(240, 300) * 1000 for that.
--
--   miop-bench miop://$HOSTNAME:pk@host:port/ -t 12 -c 60000 --latency -d 120m --timeout 15 -s delay.lua
--
-- Each worker thread has its own Lua state, randomly seeded by Lua 5.4.

function delay()
   return math.random(10, 50)
end
