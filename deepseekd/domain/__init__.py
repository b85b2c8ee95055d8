"""What every room shares and that imports nothing of deepseekd's: who is calling, errors
without HTTP status, and the audit event."""
