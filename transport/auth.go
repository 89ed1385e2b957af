package transport

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// defaultIdentities are tried, like OpenSSH does, when no IdentityFile is
// configured.
var defaultIdentities = []string{"id_ed25519", "id_ecdsa", "id_rsa"}

// authFor collects the signers for one handshake: explicit identity files
// first (so a fleet key is not crowded out by MaxAuthTries), then agent
// keys, then the default identity files. The returned close function
// releases the agent socket; call it once the handshake is over.
func authFor(s *settings) (ssh.AuthMethod, func(), error) {
	k := &keyring{seen: map[string]bool{}}
	// Public halves of explicit identities, for IdentitiesOnly with agent
	// keys whose private file is encrypted.
	wanted := map[string]bool{}
	for _, path := range s.IdentityFiles {
		if pub := k.load(path); pub != nil {
			wanted[string(pub.Marshal())] = true
		}
	}
	closeAgent := k.agent(func(pub ssh.PublicKey) bool { return !s.IdentitiesOnly || wanted[string(pub.Marshal())] })
	if len(s.IdentityFiles) == 0 {
		for _, name := range defaultIdentities {
			path := filepath.Join(homeDir(), ".ssh", name)
			if _, err := os.Stat(path); err == nil {
				k.load(path)
			}
		}
	}
	if len(k.signers) == 0 {
		closeAgent()
		msg := "no usable SSH key: set IdentityFile in the instance's ssh options, add a key to ssh-agent, or create ~/.ssh/id_ed25519"
		if len(k.skipped) > 0 {
			msg += "; skipped " + strings.Join(k.skipped, ", ")
		}
		return nil, nil, fmt.Errorf("authenticate to %s: %s", s.Name, msg)
	}
	// One publickey method with every signer: x/crypto tries each method
	// name once, so a second publickey method would never run.
	return ssh.PublicKeys(k.signers...), closeAgent, nil
}

// keyring collects signers once each, in the order found, and what could
// not be used.
type keyring struct {
	signers []ssh.Signer
	skipped []string
	seen    map[string]bool
}

func (k *keyring) add(sg ssh.Signer) {
	if key := string(sg.PublicKey().Marshal()); !k.seen[key] {
		k.seen[key] = true
		k.signers = append(k.signers, sg)
	}
}

// load adds the identity file at path and returns its public key when
// known (an encrypted key's .pub, say), even if the key itself is unusable.
func (k *keyring) load(path string) ssh.PublicKey {
	sg, pub, err := loadIdentity(path)
	if err != nil {
		k.skipped = append(k.skipped, fmt.Sprintf("%s (%v)", path, err))
		return pub
	}
	k.add(sg)
	return pub
}

// agent adds the ssh agent's keys that use accepts; the returned function
// closes the agent socket.
func (k *keyring) agent(use func(ssh.PublicKey) bool) (closeAgent func()) {
	sock := os.Getenv("SSH_AUTH_SOCK")
	if sock == "" {
		return func() {}
	}
	c, err := net.DialTimeout("unix", sock, 2*time.Second)
	if err != nil {
		return func() {}
	}
	if ss, err := agent.NewClient(c).Signers(); err == nil {
		for _, sg := range ss {
			if use(sg.PublicKey()) {
				k.add(sg)
			}
		}
	}
	return func() { c.Close() }
}

// loadIdentity reads a private key file; for an encrypted one it still
// returns the public key (from the .pub file or the key's own header) so
// the matching agent key can be used.
func loadIdentity(path string) (ssh.Signer, ssh.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	sg, err := ssh.ParsePrivateKey(data)
	if err == nil {
		return sg, sg.PublicKey(), nil
	}
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		pub := missing.PublicKey
		if pub == nil {
			if b, err := os.ReadFile(path + ".pub"); err == nil {
				pub, _, _, _, _ = ssh.ParseAuthorizedKey(bytes.TrimSpace(b))
			}
		}
		return nil, pub, errors.New("encrypted; load it into ssh-agent")
	}
	return nil, nil, err
}
