"""Moderation: the moderator over operators/moderation/, the alert log and its audit trail."""
