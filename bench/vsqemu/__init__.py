"""Helpers of bench/vs-qemu-postcopy: swapcopy side by side with QEMU's own
migration modes on the same memwalk guest (see docs/performance.md)."""
