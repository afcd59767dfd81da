// prequant/testing.h — fault injection, for tests that prove every transform is atomic.
//
// After set_fail_after_writes(n), the (n+1)-th parameter write any pass attempts throws
// prequant::Error("injected failure ..."); the pass must then leave the graph and every
// parameter exactly as they were. n < 0 disables injection (the default).
// The hook is per thread (it arms only passes called from the calling thread; no data race with
// passes running concurrently on other graphs). Not an installed header: tests and the
// extension's `_set_fail_after_writes` use it from the build tree.
#pragma once

namespace prequant::testing {

void set_fail_after_writes(int n);
// Writes counted on this thread since the last set_fail_after_writes (for choosing n in tests).
int writes_seen();

}  // namespace prequant::testing
