package cli_test

import (
	"strings"
	"testing"
)

// A fleet that reverts as one: with rollback_succeeded = True in the
// policy, a host that fails in wave 3 stops the rollout and returns the
// hosts of waves 1 and 2, which this deploy had switched, to what they
// ran before, wave 2 first; with deploy --rollback-succeeded, a canary
// that fails in wave 2 returns wave 1's hosts. Each runs
// its old system again (active and profile), the summary says they were
// reverted and why, and the deploy exits 1. Without either, they keep
// the new system.
func TestDeployRollbackSucceeded(t *testing.T) {
	f := newFaultLab(t, 3)
	v1 := f.baseline()
	f.variants(map[string]string{
		"app-1": `version = "2";`,
		"app-2": `version = "2";`,
		"app-3": `version = "2"; broken = true;`,
	})
	v2 := f.build()
	const waves = `def waves(instances):
    by = {i.name: i for i in instances}
    return [[by["app-1"]], [by["app-2"]], [by["app-3"]]]
`
	deploy := func(policy string, args ...string) (int, string, string) {
		t.Helper()
		f.write("hive.star", policy)
		return f.run(append([]string{"deploy", "--no", "build", "--connect-timeout", faultConnect}, args...)...)
	}
	reverted := func(how string, code int, out, errOut, failed string) {
		t.Helper()
		if code != 1 {
			t.Errorf("%s: exit %d, want 1", how, code)
		}
		for _, h := range []string{"app-1", "app-2"} {
			summaryHas(t, out, h, "rolled-back", "reverted with the rollout: app-3 failed in "+failed)
		}
		hosts, wrong := f.expect(map[string]hostSystem{"app-1": {active: v1["app-1"]}, "app-2": {active: v1["app-2"]}, "app-3": {active: v1["app-3"]}})
		if wrong > 0 {
			t.Errorf("%s: %s", how, hosts)
		}
		f.recorded(map[string]string{"app-1": "rolled-back", "app-2": "rolled-back"})
		if failed == "wave 3" {
			i1, i2 := strings.Index(errOut, "app-1 [wave 1] rollback ok"), strings.Index(errOut, "app-2 [wave 2] rollback ok")
			if i1 < 0 || i2 < 0 || i2 > i1 {
				t.Errorf("%s: app-2 (wave 2) is not reverted before app-1 (wave 1):\n%s", how, errOut)
			}
		}
		if !strings.Contains(errOut, "reverted 2 of 2 host(s) this deploy changed") {
			t.Errorf("%s: no count of the reverted hosts:\n%s", how, errOut)
		}
	}

	code, out, errOut := deploy(waves + "rollback_succeeded = True\n")
	reverted("the policy's rollback_succeeded", code, out, errOut, "wave 3")

	// A canary that fails in wave 2 returns wave 1's hosts.
	const canary = `def waves(instances):
    by = {i.name: i for i in instances}
    return [[by["app-1"], by["app-2"]], canaries([by["app-3"]], 1)]
`
	code, out, errOut = deploy(canary, "--rollback-succeeded")
	reverted("--rollback-succeeded", code, out, errOut, "wave 2")

	// Without: the hosts the deploy changed keep what it gave them.
	code, out, _ = deploy(waves)
	if code != 1 {
		t.Errorf("without: exit %d", code)
	}
	summaryHas(t, out, "app-1", " ok ")
	if hosts, wrong := f.expect(map[string]hostSystem{"app-1": {active: v2["app-1"]}, "app-2": {active: v2["app-2"]}, "app-3": {active: v1["app-3"]}}); wrong > 0 {
		t.Errorf("without: %s", hosts)
	}
}
