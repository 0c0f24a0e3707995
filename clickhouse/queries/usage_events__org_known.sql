-- Whether {org} appears in usage or in the organizations dimension (bound value).
SELECT
    (SELECT count() FROM usage_events WHERE org_id = {org:String})
  + (SELECT count() FROM organizations WHERE org_id = {org:String}) AS hits
