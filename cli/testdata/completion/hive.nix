# A hive for the completion tests whose names and tags hold the characters
# a shell may split a word at or treat specially (: = / + .): each must
# complete as one word, as written. The tests copy it beside
# examples/testsystems. Its hosts are never contacted.
let
  testSystem = import ../testsystems;
in
{
  systems.app.toplevel = testSystem { name = "app"; };
  instances = {
    "db.eu-1" = { system = "app"; host = "127.77.0.1"; tags = [ "env=prod" "team:db" ]; };
    "db.eu-2" = { system = "app"; host = "127.77.0.2"; tags = [ "env=staging" "team:db" ]; };
    "eu/web+1" = { system = "app"; host = "127.77.0.3"; tags = [ "env=prod" "team:web" "eu/west" ]; };
  };
}
