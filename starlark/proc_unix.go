//go:build unix

package starlark

import (
	"os"
	"runtime"
	"syscall"
)

// evaluatorAttr puts the evaluator in a process group of its own, so that
// Ctrl-C in a terminal reaches nix-hive, which stops its calls, and not the
// evaluator behind its back.
func evaluatorAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

// maxRSS is the peak resident size of an exited process, in bytes.
func maxRSS(ps *os.ProcessState) uint64 {
	ru, ok := ps.SysUsage().(*syscall.Rusage)
	if !ok || ru.Maxrss <= 0 {
		return 0
	}
	if runtime.GOOS == "darwin" || runtime.GOOS == "ios" {
		return uint64(ru.Maxrss) // bytes there, KiB elsewhere
	}
	return uint64(ru.Maxrss) << 10
}
