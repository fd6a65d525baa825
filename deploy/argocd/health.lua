-- Argo CD health check for splatops.dev/GaussianSplatTraining.
-- Progressing until the operator has seen the latest spec (status.observedGeneration) and
-- while Pending, Queued or Running; Healthy once Succeeded; Degraded when Failed;
-- Suspended while spec.suspend or phase Suspended.
local hs = {}
local generation = obj.metadata and obj.metadata.generation or nil
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the splatops operator to pick up the training"
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local phase = status.phase
local progress = status.progress or {}
local detail = status.message or progress.message or ""
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "Trained: " .. (status.modelPath or "results.ply")
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = (status.reason or "Failed") .. ": " .. detail
elseif phase == "Suspended" or (obj.spec ~= nil and obj.spec.suspend == true) then
  hs.status = "Suspended"
  hs.message = "Suspended (spec.suspend)"
elseif phase == "Pending" or phase == "Queued" or phase == "Running" then
  hs.status = "Progressing"
  if detail ~= "" then
    hs.message = phase .. ": " .. detail
  else
    hs.message = phase
  end
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
