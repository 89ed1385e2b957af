// Package endpoint holds the rules for what a hive may say about reaching
// a host: instance names, addresses, logins, tags and OpenSSH options.
//
// A hive is untrusted input: it may be generated from Terraform or Pulumi
// output, and its values end up in OpenSSH %-tokens (the user's own
// ProxyCommand expands %h, %n and %r through a shell), in OpenSSH config
// files, in store URLs and in shell completion. So every value is checked
// against an allowlist when the hive is read (eval) and again when a
// connection pool is made from it (transport). A value these rules accept
// is one word that no shell and no OpenSSH config line treats specially.
//
// The package decides; it never connects, reads files or runs anything.
package endpoint
