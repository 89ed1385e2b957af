package transport

// The lab's helpers, for the tests of package transport_test
// (holder_test.go), which go through a real holder: package mux, which
// imports this one.
var (
	Hermetic     = hermetic
	NewTestPool  = newTestPool
	TestCtx      = testCtx
	LabEndpoints = labEndpoints
	TestReader   = testReader
	TestCancel   = testCancel
)
