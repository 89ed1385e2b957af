// Package spelling finds what a user probably meant: the "did you mean"
// of hive attributes, targets and policy settings.
// It must not know what the names it compares are.
package spelling
