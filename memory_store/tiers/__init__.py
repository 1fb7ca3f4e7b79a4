"""The tiers of one stream, kept within budget inside the transaction that writes a segment (transaction.py):
its steps by concern in events.py, budgets.py, merging.py and retention.py."""
