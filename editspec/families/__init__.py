"""What each family of backends shares, so that a backend imports its family and never a sibling:
locate (ROME, MEMIT, AlphaEdit), training (ft, sense), memory (grace, melo), plugin (ike, retrieval)."""
