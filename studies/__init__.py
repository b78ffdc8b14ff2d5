"""Claim studies: one module per claim group (see precond_lab.study for the contract)."""
