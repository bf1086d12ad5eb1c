"""Privacy budgets: exact cost value objects and the ledger that charges them."""
