// Package testenv says what a test needs from this machine. A test that
// cannot find a tool skips and says why, except under CI (CI set in the
// environment), where it fails: CI must never pass by skipping the tests
// that matter.
// It must not be imported by anything but tests.
package testenv
