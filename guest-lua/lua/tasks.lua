-- Light threads, ngx.sleep and subrequests, over wit/tasks.wit.
--
-- The host runs operations (timers, outbound I/O, subrequests) while the
-- guest waits: a capability starts one and gets its id, `await(op)` waits
-- for it, and the capability collects the result. Light threads
-- (`ngx.thread.spawn`) are coroutines: a thread that awaits yields to the
-- scheduler here, which resumes whichever thread's operation finishes first,
-- so the I/O of several threads overlaps. The entry thread (the phase
-- handler itself) is not a coroutine: when it awaits, it drives the
-- scheduler until its own operation is done.
--
-- Nothing here is a security boundary: the host bounds the operations, their
-- number and their time (the request's deadline ends every wait).

local _, prim = ...

local co_create, co_status, co_running, co_yield, co_isyieldable =
  coroutine.create, coroutine.status, coroutine.running, coroutine.yield, coroutine.isyieldable
local co_resume = coroutine.resume
local pack, unpack, remove = table.pack, table.unpack, table.remove
local type, error, pairs, select, tostring, format, floor =
  type, error, pairs, select, tostring, string.format, math.floor
local traceback = debug.traceback

local M = {}

-- Set by ngx.lua: the value ngx.exit raises, and how a thread's error is logged.
M.EXIT = nil
M.log_error = function(_) end

local WAIT, JOIN = {}, {}  -- what a thread yields: wait for an operation, for threads

local threads = {}   -- coroutine -> its record (user threads only)
local waiting = {}   -- operation id -> the thread record waiting for it
local runnable = {}  -- thread records ready to resume, in order
local live = 0       -- user threads not finished
local exiting = false -- a thread called ngx.exit: the request ends

-- The record of the running light thread, if the code running now may yield
-- to the scheduler.
local function current()
  local co, main = co_running()
  if main then return nil end
  local t = threads[co]
  if t and co_isyieldable() then return t end
  return nil
end

local function wake_joiners(t)
  for _, other in pairs(threads) do
    local joining = other.joining
    if joining then
      for i = 1, #joining do
        if joining[i] == t then
          other.joining = nil
          runnable[#runnable + 1] = other
          break
        end
      end
    end
  end
end

local function finish(t, ok, ...)
  t.done = true
  live = live - 1
  if ok then
    t.results = pack(true, ...)
  else
    local err = ...
    if err == M.EXIT then
      exiting = true
      t.results = pack(false, "exit")
    else
      t.results = pack(false, err)
      M.log_error("lua user thread aborted: " .. traceback(t.co, tostring(err)))
    end
  end
  wake_joiners(t)
end

-- Resume thread `t` and file it by what it did next.
local function step(t, ...)
  local co = t.co
  local r = pack(co_resume(co, ...))
  if co_status(co) == "dead" then
    finish(t, unpack(r, 1, r.n))
  elseif r[2] == WAIT then
    waiting[r[3]] = t
  elseif r[2] == JOIN then
    t.joining = r[3]
  else
    -- a plain coroutine.yield inside a thread: it runs again later
    runnable[#runnable + 1] = t
  end
end

-- Run the scheduler until `op` (an operation the caller waits for itself,
-- or nil) has finished or `done()` holds.
local function drive(op, done)
  while not (done and done()) do
    if exiting then error(M.EXIT, 0) end
    local t = remove(runnable, 1)
    if t then
      if not t.done and co_status(t.co) == "suspended" then step(t) end
    else
      local ops, n = {}, 0
      for id in pairs(waiting) do n = n + 1; ops[n] = id end
      if op then n = n + 1; ops[n] = op end
      if n == 0 then error("no light thread can make progress", 0) end
      local ready, err = prim.wait_any(ops)
      if not ready then error(err, 0) end
      if ready == op then return end
      local owner = waiting[ready]
      waiting[ready] = nil
      runnable[#runnable + 1] = owner
    end
  end
end

-- Wait until operation `op` has finished (the caller then collects it).
function M.await(op)
  if current() then
    co_yield(WAIT, op)
    return
  end
  drive(op)
  if exiting then error(M.EXIT, 0) end
end

-- Whether light threads are alive (or one called ngx.exit).
function M.busy() return live > 0 or exiting end

-- Wait for every light thread (the end of a phase); ngx.exit in one ends
-- the request.
function M.drain()
  if live > 0 then drive(nil, function() return live == 0 end) end
  if exiting then error(M.EXIT, 0) end
end

-- Kill every light thread (the entry thread ended with an error or ngx.exit).
function M.kill_all()
  for co, t in pairs(threads) do
    if not t.done then t.done, t.killed = true, true end
    threads[co] = nil
  end
  for id in pairs(waiting) do prim.cancel(id) end
  waiting, runnable, live, exiting = {}, {}, 0, false
end

---------------------------------------------------------------------------
-- ngx.thread
---------------------------------------------------------------------------

local thread = {}
M.thread = thread

function thread.spawn(fn, ...)
  if type(fn) ~= "function" then
    error(format("bad argument #1 to 'spawn' (function expected, got %s)", type(fn)), 2)
  end
  local co = co_create(fn)
  local parent = co_running()
  local t = { co = co, parent = parent }
  threads[co] = t
  live = live + 1
  step(t, ...)
  if exiting and not current() then error(M.EXIT, 0) end
  return co
end

-- Threads already waited for or killed (weak: they may be collected).
local gone = setmetatable({}, { __mode = "k" })

local function record_of(co, fname)
  local t = type(co) == "thread" and (threads[co] or gone[co])
  if not t then error(format("bad argument to '%s' (not a user thread)", fname), 3) end
  return t
end

-- ngx.thread.wait(t1, t2, ...): the results of the first to finish.
function thread.wait(...)
  local n = select("#", ...)
  if n == 0 then error("at least one thread required", 2) end
  local targets = {}
  local me = co_running()
  for i = 1, n do
    local t = record_of((select(i, ...)), "wait")
    if t.parent ~= me then error("only the parent thread can wait for a thread", 2) end
    if t.collected then return nil, "already waited or killed" end
    targets[i] = t
  end
  local function first_done()
    for i = 1, n do
      if targets[i].done then return targets[i] end
    end
  end
  if not first_done() then
    if current() then
      co_yield(JOIN, targets)
    else
      drive(nil, function() return first_done() ~= nil end)
      if exiting then error(M.EXIT, 0) end
    end
  end
  local t = first_done()
  t.collected = true
  threads[t.co] = nil
  gone[t.co] = t
  if t.killed then return nil, "killed" end
  return unpack(t.results, 1, t.results.n)
end

function thread.kill(co)
  if type(co) ~= "thread" then error("bad argument #1 to 'kill' (thread expected)", 2) end
  local t = threads[co]
  if not t then
    if gone[co] then return nil, "already waited or killed" end
    return nil, "not user thread"
  end
  if t.parent ~= co_running() then return nil, "not user thread's parent" end
  if t.done then return nil, "already terminated" end
  for id, owner in pairs(waiting) do
    if owner == t then
      waiting[id] = nil
      prim.cancel(id)
    end
  end
  for i = #runnable, 1, -1 do
    if runnable[i] == t then remove(runnable, i) end
  end
  t.done, t.killed, t.collected = true, true, true
  threads[co] = nil
  gone[co] = t
  live = live - 1
  wake_joiners(t)
  return true
end

---------------------------------------------------------------------------
-- ngx.sleep
---------------------------------------------------------------------------

function M.sleep(seconds)
  if type(seconds) ~= "number" then
    error(format("bad argument #1 to 'sleep' (number expected, got %s)", type(seconds)), 2)
  end
  if seconds < 0 then error("invalid sleep duration \"" .. tostring(seconds) .. "\"", 2) end
  local ms = floor(seconds * 1000 + 0.5)
  local op, err = prim.sleep(ms)
  if not op then error(err, 2) end
  M.await(op)
  prim.finish_sleep(op)
end

---------------------------------------------------------------------------
-- subrequests (ngx.location.capture), started here, shaped in ngx.lua
---------------------------------------------------------------------------

-- Start the subrequests of `list` ({method, uri, args, headers, body} each),
-- wait for them all, and return their responses (or nil, err each).
function M.capture_all(list)
  local ops, results = {}, {}
  for i = 1, #list do
    local r = list[i]
    local op, err = prim.capture(r.method, r.uri, r.args, r.headers, r.body)
    if not op then
      for j = 1, i - 1 do prim.cancel(ops[j]) end
      return nil, err
    end
    ops[i] = op
  end
  for i = 1, #ops do
    M.await(ops[i])
    local response, err = prim.finish_capture(ops[i])
    if not response then
      for j = i + 1, #ops do prim.cancel(ops[j]) end
      return nil, err
    end
    results[i] = response
  end
  return results
end

return M
