"""`editspec bench`: compile and verify one spec with several backends (runner) and render the comparison (render)."""
