"""Layer 5, what comes out: result records with their protocol cards (records) and figures (plots)."""
