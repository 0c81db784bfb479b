"""SQL, one module per aggregate. Every function takes the unit of work (`escrow.db.Tx`) it runs in."""
