package host

import "fmt"

// Goal is what switch-to-configuration is asked to do.
type Goal string

const (
	GoalSwitch      Goal = "switch"
	GoalBoot        Goal = "boot"
	GoalTest        Goal = "test"
	GoalDryActivate Goal = "dry-activate"
)

// ParseGoal validates a --goal value.
func ParseGoal(s string) (Goal, error) {
	switch g := Goal(s); g {
	case GoalSwitch, GoalBoot, GoalTest, GoalDryActivate:
		return g, nil
	}
	return "", fmt.Errorf("goal %q: want switch, boot, test or dry-activate", s)
}

// SetsProfile reports whether the goal makes the system the boot default.
func (g Goal) SetsProfile() bool { return g == GoalSwitch || g == GoalBoot }

// Activates reports whether the goal changes what runs now ("" is a
// record from before goals were recorded: a switch).
func (g Goal) Activates() bool { return g == "" || g == GoalSwitch || g == GoalTest }
