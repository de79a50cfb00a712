-- Argo CD health check for ssm.operator.dev/CommandInvocation.
--
-- Healthy     status.status is Success.
-- Degraded    status.status is Failed, TimedOut or Cancelled, or the operator
--             set Stalled=True (a permanent error such as InvalidInstanceId or
--             InvocationNotFound); the message says why.
-- Progressing everything else: no status yet, the CRD's default status
--             {observedGeneration: -1} (the operator has not observed the
--             object yet), Pending, InProgress, Delayed, Cancelling, transient
--             errors (Throttled, SsmUnavailable), or a status that describes an
--             older spec generation.
--
-- Argo CD runs this with gopher-lua (Lua 5.1): no goto, integer division,
-- bitwise operators or other Lua 5.2+ features.
local hs = {}

local function num(n)
  if type(n) == "number" and n == math.floor(n) then
    return string.format("%d", n)
  end
  return tostring(n)
end

local function ssm_message(st)
  local msg = "SSM status " .. tostring(st.status)
  if st.statusDetails ~= nil and st.statusDetails ~= "" and st.statusDetails ~= st.status then
    msg = msg .. " (" .. tostring(st.statusDetails) .. ")"
  end
  if st.responseCode ~= nil and st.responseCode ~= -1 then
    msg = msg .. ", response code " .. num(st.responseCode)
  end
  return msg
end

local failed = { Failed = true, TimedOut = true, Cancelled = true }

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report the SSM invocation status"
  return hs
end
local st = obj.status

-- The CRD defaults a missing status to {observedGeneration: -1}: the operator
-- has not written anything yet.
if st.observedGeneration ~= nil and st.observedGeneration < 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator: it has not observed this CommandInvocation yet"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

if generation ~= nil and st.observedGeneration ~= nil and st.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. num(generation) ..
    " (status describes generation " .. num(st.observedGeneration) .. ")"
  return hs
end

-- Current conditions only: one stamped for an older generation is stale.
local stalled = nil
local reconciling = nil
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    local current = generation == nil or c.observedGeneration == nil or c.observedGeneration >= generation
    if current and c.status == "True" then
      if c.type == "Stalled" then
        stalled = c
      elseif c.type == "Reconciling" then
        reconciling = c
      end
    end
  end
end

if st.status ~= nil and failed[st.status] then
  hs.status = "Degraded"
  hs.message = ssm_message(st)
  return hs
end

if stalled ~= nil then
  hs.status = "Degraded"
  if stalled.message ~= nil and stalled.message ~= "" then
    hs.message = stalled.message
  elseif stalled.reason ~= nil and stalled.reason ~= "" then
    hs.message = stalled.reason
  else
    hs.message = "Stalled"
  end
  return hs
end

if st.status == "Success" then
  hs.status = "Healthy"
  hs.message = ssm_message(st)
  return hs
end

hs.status = "Progressing"
if reconciling ~= nil and reconciling.message ~= nil and reconciling.message ~= "" then
  hs.message = reconciling.message
elseif st.status ~= nil then
  hs.message = ssm_message(st)
else
  hs.message = "Waiting for the operator to report the SSM invocation status"
end
return hs
