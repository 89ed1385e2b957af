//go:build !unix

package starlark

import (
	"os"
	"syscall"
)

func evaluatorAttr() *syscall.SysProcAttr { return nil }

// maxRSS is unknown here.
func maxRSS(*os.ProcessState) uint64 { return 0 }
