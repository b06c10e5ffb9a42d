from tests.support import Deployment


async def test_two_users_chat_across_gateways(deployment: Deployment) -> None:
    alice = await deployment.connect_on("gw1", "alice")
    bob = await deployment.connect_on("gw2", "bob")
    sid = await alice.send("#general", "hello bob")
    [msg] = await bob.messages(1)
    assert msg["id"] == sid and msg["from"] == "alice" and msg["text"] == "hello bob"
