-- Display name per organization (newest load wins).
SELECT org_id, name FROM organizations FINAL ORDER BY org_id
