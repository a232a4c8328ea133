-- wrk script: every request carries the next token of a file (one token per line), as
-- `Authorization: Bearer <token>`, so that each request presents a token the sidecar has not seen
-- recently (as long as the file holds more tokens than the sidecar's verified-token cache).
--
--   wrk -t1 -c32 -d10s -s bench/first_seen.lua http://127.0.0.1:8080/ -- tokens.txt [THREADS [STATE]]
--
-- THREADS: wrk's -t (default 1); each thread takes every THREADS-th token (its own disjoint share),
-- so no two threads present the same token.
-- STATE: a file where done() records how far each thread got, and where init() resumes from if it
-- exists: a measured run then carries on where its warm-up run stopped instead of re-presenting the
-- tokens the warm-up just got cached. Threads progress unevenly, hence one position per thread.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

local requests = {}
local n = 0
i = 0 -- globals, so that done() can read them through thread:get()
state = nil

local function read_state(path, me)
   local f = io.open(path, "r")
   if f == nil then
      return 0
   end
   local start = 0
   for line in f:lines() do
      local tid, pos = line:match("^(%d+) (%d+)$")
      if tid ~= nil and tonumber(tid) == me then
         start = tonumber(pos)
      end
   end
   f:close()
   return start
end

function init(args)
   local path = args[1]
   if path == nil then
      error("first_seen.lua: pass the token file after the URL: ... URL -- tokens.txt")
   end
   local nthreads = tonumber(args[2]) or 1
   local me = id or 0
   local line_no = 0
   for line in io.lines(path) do
      if line ~= "" then
         if line_no % nthreads == me then
            n = n + 1
            -- Requests are built once here; request() only picks the next one.
            requests[n] = wrk.format(nil, nil, {["Authorization"] = "Bearer " .. line})
         end
         line_no = line_no + 1
      end
   end
   if n == 0 then
      error("first_seen.lua: no tokens in " .. path)
   end
   state = args[3]
   if state ~= nil then
      i = read_state(state, me) % n
   end
end

function request()
   i = i % n + 1
   return requests[i]
end

function done(summary, latency, reqs)
   -- Runs in wrk's main Lua state, which has seen setup() but not init(): ask a thread.
   local path = threads[1] and threads[1]:get("state")
   if path == nil then
      return
   end
   local f = assert(io.open(path, "w"))
   for _, thread in ipairs(threads) do
      f:write(string.format("%d %d\n", thread:get("id"), thread:get("i")))
   end
   f:close()
end
