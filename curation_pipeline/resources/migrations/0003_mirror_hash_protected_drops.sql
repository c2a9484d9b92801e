-- pHash of the horizontally mirrored image: lets the perceptual tier match flipped copies.
ALTER TABLE images ADD COLUMN phash_mirror bigint;
-- Protected drops (e.g. a test set): other drops' duplicates of their images are reported as leaks.
ALTER TABLE drops ADD COLUMN protected boolean NOT NULL DEFAULT false;
