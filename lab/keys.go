package lab

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
)

// writeKeyPair generates an ed25519 key in Go (forking ssh-keygen once per
// host would dominate the start time of a 50-host lab) and writes it in
// OpenSSH format to path and path+".pub". It returns the public key in
// authorized_keys format without a comment.
func writeKeyPair(path, comment string) (string, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", fmt.Errorf("generate ed25519 key for %s: %w", path, err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return "", fmt.Errorf("marshal private key %s: %w", path, err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("public key of %s: %w", path, err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub)))
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	// ssh and sshd refuse private keys that others can read.
	if err := writeFileAtomic(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return "", err
	}
	if err := writeFileAtomic(path+".pub", []byte(line+" "+comment+"\n"), 0o644); err != nil {
		return "", err
	}
	return line, nil
}

// writeFileAtomic writes data to a temporary file beside path and renames it
// into place, so a reader (sshd, a waiting demo script) never sees half a file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
