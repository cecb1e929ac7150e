"""Pure pod mutation: plan, builders and JSONPatch. No I/O."""
