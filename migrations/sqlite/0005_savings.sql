-- Savings (issue 14): each release keeps the figure it was planned with, so reports stay true
-- after prices change. `saving_minor` is the monthly run-rate saved in minor units (cents, fen)
-- of `saving_currency`; NULL with a basis set when the price was unknown, and all NULL when the
-- plan was not priced. `renewal_minor` is a subscription's month of renewal avoided (not in the
-- run-rate).
ALTER TABLE releases ADD COLUMN saving_basis TEXT;
ALTER TABLE releases ADD COLUMN saving_minor INTEGER;
ALTER TABLE releases ADD COLUMN saving_currency TEXT;
ALTER TABLE releases ADD COLUMN renewal_minor INTEGER;
