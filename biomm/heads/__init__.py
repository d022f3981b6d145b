"""Heads on top of the fused model: virtual cell, clinical reasoning (question answering: biomm.heads.qa.service)."""
