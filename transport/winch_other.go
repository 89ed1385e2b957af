//go:build !unix

package transport

import "golang.org/x/crypto/ssh"

// followWindowSize is a no-op where there is no SIGWINCH.
func followWindowSize(fd int, s *ssh.Session) (stop func()) { return func() {} }
