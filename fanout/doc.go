// Package fanout runs one function per host with a bound on how many run
// at once: the one bounded worker pool behind deploy, status, rollback and
// run.
// It must not know what it runs.
package fanout
