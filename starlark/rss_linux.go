package starlark

import (
	"bytes"
	"fmt"
	"os"
)

// anonResident is how much anonymous memory (heap and stacks, not the
// program's file) process pid has resident, from /proc/pid/statm.
func anonResident(pid int) (uint64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", pid))
	if err != nil {
		return 0, false
	}
	var size, resident, shared uint64
	if _, err := fmt.Fscan(bytes.NewReader(b), &size, &resident, &shared); err != nil || shared > resident {
		return 0, false
	}
	return (resident - shared) * uint64(os.Getpagesize()), true
}
