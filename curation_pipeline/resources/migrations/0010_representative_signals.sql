-- What picks a duplicate group's representative (issue 15): the JPEG quality its quantisation
-- tables say it was saved at (NULL: not a JPEG), and when the object last changed in its store
-- (of identical copies, the one that was there first is the original).
ALTER TABLE images ADD COLUMN jpeg_quality smallint;
ALTER TABLE images ADD COLUMN last_modified timestamptz;
