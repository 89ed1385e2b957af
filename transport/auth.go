package transport

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// defaultIdentities are tried, like OpenSSH does, when no IdentityFile is
// configured.
var defaultIdentities = []string{"id_ed25519", "id_ecdsa", "id_rsa"}

// authFor collects the signers for one handshake: explicit identity files
// first (so a fleet key is not crowded out by MaxAuthTries), then agent
// keys, then the default identity files, then encrypted files no agent
// holds, decrypted with a passphrase asked for once. A user certificate
// (CertificateFile, or <identity>-cert.pub beside an identity file) is
// offered before the key it certifies. The returned close function
// releases the agent socket; call it once the handshake is over.
func (h *Hosts) authFor(s *settings) (ssh.AuthMethod, func(), error) {
	k := &keyring{seen: map[string]bool{}, ids: &h.ids}
	// Public halves of explicit identities, for IdentitiesOnly with agent
	// keys whose private file is encrypted.
	wanted := map[string]bool{}
	for _, path := range s.IdentityFiles {
		if pub := k.load(path); pub != nil {
			wanted[string(pub.Marshal())] = true
		}
	}
	closeAgent := k.agent(func(pub ssh.PublicKey) bool { return !s.IdentitiesOnly || wanted[string(pub.Marshal())] })
	files := s.IdentityFiles
	if len(s.IdentityFiles) == 0 {
		for _, name := range defaultIdentities {
			path := filepath.Join(homeDir(), ".ssh", name)
			if _, err := os.Stat(path); err == nil {
				k.load(path)
				files = append(files, path)
			}
		}
	}
	k.decrypt(h.cfg.Passphrase)
	k.certify(append(append([]string(nil), s.CertificateFiles...), certFilesBeside(files)...))
	if len(k.signers) == 0 {
		closeAgent()
		msg := "no usable SSH key: set IdentityFile in the instance's ssh options, add a key to ssh-agent, or create ~/.ssh/id_ed25519"
		if len(k.skipped) > 0 {
			msg += "; skipped " + strings.Join(k.skipped, ", ")
		}
		return nil, nil, LoginError{fmt.Errorf("authenticate to %s: %s", s.Name, msg)}
	}
	// One publickey method with every signer: x/crypto tries each method
	// name once, so a second publickey method would never run.
	return ssh.PublicKeys(k.signers...), closeAgent, nil
}

// certFilesBeside are the <identity>-cert.pub files that exist, which
// OpenSSH loads with their identities.
func certFilesBeside(ids []string) []string {
	var out []string
	for _, id := range ids {
		if _, err := os.Stat(id + "-cert.pub"); err == nil {
			out = append(out, id+"-cert.pub")
		}
	}
	return out
}

// identities remembers identity files decrypted with a passphrase, so a
// run asks once per file however many hosts use it.
type identities struct {
	mu        sync.Mutex // held while asking: one prompt at a time
	decrypted map[string]ssh.Signer
	failed    map[string]error
}

// keyring collects signers once each, in the order found, and what could
// not be used.
type keyring struct {
	signers   []ssh.Signer
	skipped   []string
	seen      map[string]bool
	encrypted []encryptedKey
	ids       *identities
}

type encryptedKey struct {
	path string
	pub  ssh.PublicKey
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
	var enc *encryptedError
	switch {
	case errors.As(err, &enc):
		k.encrypted = append(k.encrypted, encryptedKey{path, pub})
	case err != nil:
		k.skipped = append(k.skipped, fmt.Sprintf("%s (%v)", path, err))
	default:
		k.add(sg)
	}
	return pub
}

// decrypt adds the encrypted identity files that no agent key stood in
// for, asking ask for their passphrases.
func (k *keyring) decrypt(ask func(string) ([]byte, error)) {
	for _, e := range k.encrypted {
		if e.pub != nil && k.seen[string(e.pub.Marshal())] {
			continue // the agent holds it
		}
		if ask == nil {
			k.skipped = append(k.skipped, e.path+" (encrypted, and no agent holds it; load it into ssh-agent, or run from a terminal to be asked for its passphrase)")
			continue
		}
		sg, err := k.ids.get(e.path, ask)
		if err != nil {
			k.skipped = append(k.skipped, fmt.Sprintf("%s (%v)", e.path, err))
			continue
		}
		k.add(sg)
	}
}

func (ids *identities) get(path string, ask func(string) ([]byte, error)) (ssh.Signer, error) {
	ids.mu.Lock()
	defer ids.mu.Unlock()
	if sg := ids.decrypted[path]; sg != nil {
		return sg, nil
	}
	if err := ids.failed[path]; err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pass, err := ask(path)
	if err == nil {
		var sg ssh.Signer
		sg, err = ssh.ParsePrivateKeyWithPassphrase(data, pass)
		clear(pass)
		if err == nil {
			if ids.decrypted == nil {
				ids.decrypted = map[string]ssh.Signer{}
			}
			ids.decrypted[path] = sg
			return sg, nil
		}
		if errors.Is(err, x509.IncorrectPasswordError) {
			err = errors.New("wrong passphrase")
		}
	}
	if ids.failed == nil {
		ids.failed = map[string]error{}
	}
	ids.failed[path] = err // not asked again for every host
	return nil, err
}

// certify puts a certificate signer before each signer a certificate file
// certifies; unreadable files are noted.
func (k *keyring) certify(files []string) {
	var certs []ssh.Signer
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			k.skipped = append(k.skipped, fmt.Sprintf("certificate %s (%v)", f, err))
			continue
		}
		pub, _, _, _, err := ssh.ParseAuthorizedKey(bytes.TrimSpace(data))
		cert, ok := pub.(*ssh.Certificate)
		if err != nil || !ok || cert.CertType != ssh.UserCert {
			k.skipped = append(k.skipped, fmt.Sprintf("certificate %s (not a user certificate)", f))
			continue
		}
		for _, sg := range k.signers {
			if bytes.Equal(sg.PublicKey().Marshal(), cert.Key.Marshal()) {
				if cs, err := ssh.NewCertSigner(cert, sg); err == nil {
					certs = append(certs, cs)
				}
				break
			}
		}
	}
	k.signers = append(certs, k.signers...)
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

// encryptedError is an identity file that needs a passphrase.
type encryptedError struct{}

func (*encryptedError) Error() string { return "encrypted" }

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
		return nil, pub, &encryptedError{}
	}
	return nil, nil, err
}
