// prequant/testing.h — fault injection, for tests that prove every transform is atomic.
//
// After set_fail_after_writes(n), the (n+1)-th parameter write any pass attempts throws
// prequant::Error("injected failure ..."); the pass must then leave the graph and every
// parameter exactly as they were. n < 0 disables injection (the default).
#pragma once

namespace prequant::testing {

void set_fail_after_writes(int n);
// Writes counted since the last set_fail_after_writes (for choosing n in tests).
int writes_seen();

}  // namespace prequant::testing
