"""Issue 10's holes, each reproduced as an attack: every test here failed before the fix."""
