"""Hardware drivers (card readers, cameras) behind one interface, found through entry points."""
