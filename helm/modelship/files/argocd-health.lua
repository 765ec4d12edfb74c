-- Argo CD health check for modelship.io/ModelDeployment.
-- Argo CD runs it in gopher-lua (Lua 5.1) with the live object in `obj`.
-- Healthy only when the operator has observed the latest spec and reports Ready; a rollout
-- that waits for a manual promote is Suspended; Degraded carries the operator's own message.
local hs = {}

local function condition(status, kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function message_of(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local status = obj.status
local generation = obj.metadata.generation
if status == nil or status.observedGeneration == nil or status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local degraded = condition(status, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = message_of(degraded, degraded.reason or "Degraded")
  return hs
end

if status.phase == "Paused" then
  hs.status = "Suspended"
  -- The rollout's own words: which step waits, and for what (a promote, or traffic to measure).
  local rollout = status.rollout or {}
  hs.message = rollout.message or message_of(condition(status, "Progressing"), "The rollout waits for a manual promote")
  return hs
end

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message_of(ready, "Ready")
  return hs
end

hs.status = "Progressing"
hs.message = message_of(condition(status, "Progressing"), message_of(ready, "Waiting for the model to become ready"))
return hs
