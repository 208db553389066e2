from batch_pipelines_tests.test_cleanup_op import *
def test_dbg(env, tmp_path):
    exports = env.data / "exports"
    old = write(exports / "b1" / "old.csv", "old", age_days=40)
    ctx = make_ctx(env, {"kind": "old_files", "root": "exports", "older_than_days": 30})
    print(list(C.walk_files(exports, exports.resolve())))
    plan = C.make_plan(ctx, ctx.item)
    print(plan)
    print(C.handle_cleanup(ctx).metrics)
