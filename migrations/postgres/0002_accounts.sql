-- Several accounts: each release, batch and observation belongs to the account whose
-- credentials list and release it ('' is the default account). A batch holds one account's
-- releases only, because one DeleteInstances call is signed by one account.
ALTER TABLE releases ADD COLUMN account TEXT NOT NULL DEFAULT '';
ALTER TABLE batches ADD COLUMN account TEXT NOT NULL DEFAULT '';
ALTER TABLE observations ADD COLUMN account TEXT NOT NULL DEFAULT '';
