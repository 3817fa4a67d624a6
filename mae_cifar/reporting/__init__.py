"""Run files -> one DataFrame -> statistics -> tables and figures; imports no torch."""
