"""Guest-side collectors: stdlib-only scripts copied into each kernel under test."""
