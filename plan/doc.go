// Package plan decides what a rollout will do before any host is touched:
// the targets a hive's patterns and its policy choose, the systems they
// need (built or found with eval), who receives which closure from where
// (pushed, or substituted from a store instance or URL), the waves with
// stores before their consumers, and the policy's checks as the executor
// asks them (Checks). It also draws a plan: closure sizes and the
// Graphviz graph of its distribution tree.
//
// A plan is computed, never carried out, here: this package connects to
// no host and imports neither the executor (deploy) nor what runs on
// hosts (host). What a plan changes on the hosts it targets is a fleet
// operation of deploy's (deploy.Changes), which asks them.
package plan
