"""Task suites (synthetic, digits, tables, hub), task kinds, and how data is partitioned among clients."""
