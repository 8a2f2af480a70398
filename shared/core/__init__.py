"""Pure decision logic: same photo or not, which copy to keep, when an action is safe. No I/O."""
